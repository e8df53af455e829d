"""`Record`: a tuple with named fields, like typing.NamedTuple, for the start-up path.

The shims run on every curl/wget call, and `typing` (which imports `re`),
`collections` and `dataclasses` cost 2-14 ms to import, more than the rest
of a probe. A subclass lists its fields as annotations, with optional
defaults, exactly as it would for NamedTuple:

    >>> class Point(Record):
    ...     x: int
    ...     y: int = 0
    >>> Point(1), Point(1, y=2).y, Point(1) == (1, 0)
    (Point(x=1, y=0), 2, True)
"""

from __future__ import annotations


class Record(tuple):
    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _defaults: dict[str, object] = {}  # noqa: RUF012 (replaced per subclass, never mutated)

    def __init_subclass__(cls) -> None:
        own = cls.__dict__
        cls._fields = tuple(own.get("__annotations__", {}))
        cls._defaults = {name: own[name] for name in cls._fields if name in own}
        for i, name in enumerate(cls._fields):
            setattr(cls, name, property(lambda self, i=i: tuple.__getitem__(self, i)))

    def __new__(cls, *args: object, **kwargs: object) -> Record:
        if len(args) > len(cls._fields):
            raise TypeError(f"{cls.__name__} takes {len(cls._fields)} fields")
        values = list(args)
        for name in cls._fields[len(args) :]:
            if name in kwargs:
                values.append(kwargs.pop(name))
            elif name in cls._defaults:
                values.append(cls._defaults[name])
            else:
                raise TypeError(f"{cls.__name__} needs {name}")
        if kwargs:
            raise TypeError(f"{cls.__name__} has no field {next(iter(kwargs))}")
        return tuple.__new__(cls, values)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={value!r}" for name, value in zip(self._fields, self, strict=True)
        )
        return f"{type(self).__name__}({fields})"

    def __getnewargs__(self) -> tuple[object, ...]:
        return tuple(self)
