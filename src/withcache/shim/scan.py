"""Read a curl or wget command line the way the tool itself reads it.

Given a tool's option table this splits argv into options (with their
arguments) and operands, so that an option's argument is never mistaken for
a URL. It follows each tool's parser: curl's (long names by unique prefix,
`--no-` for booleans, no `--name=value`) and GNU getopt_long's for wget
(unique prefixes, `--name=value`, optional arguments only after `=`, and
argument permutation unless POSIXLY_CORRECT is set). Anything the tool would
reject, or that the table does not know, is reported instead of guessed.
Pure: no I/O.
"""

from __future__ import annotations

from withcache.record import Record

# Option kinds in a table.
ARG = "arg"  # takes an argument: the next word, the rest of a short bundle, or `=value`
FLAG = "flag"  # takes none
BOOL = "bool"  # takes none; curl also accepts it as --no-<name>
OPTIONAL = "optional"  # getopt optional_argument: only as --name=value (wget's booleans)

# Parser styles.
CURL = "curl"
GETOPT = "getopt"


class Table(Record):
    """A tool's options as plain data (a native port mirrors this)."""

    style: str  # CURL or GETOPT
    long: dict[str, str]  # long name -> kind
    short: dict[str, str]  # short letter -> long name


class Token(Record):
    """One option or operand, with where it sits in argv."""

    index: int  # argv index where it starts
    name: str  # canonical long option name; "" for an operand
    value: str | None  # the option's argument, or the operand itself
    value_index: int  # argv index that is exactly `value` (-1 if it shares a word)
    negated: bool = False  # given as --no-<name>


class Unreadable(ValueError):
    """The command line is not one the table can read; the message says why."""


def scan(table: Table, argv: list[str], posixly_correct: bool = False) -> list[Token]:
    """Split argv (without argv[0]) into options and operands; Unreadable if unsure."""
    tokens: list[Token] = []
    i = 0
    options_end = False
    while i < len(argv):
        word = argv[i]
        if options_end or not word.startswith("-") or (word == "-" and table.style == GETOPT):
            tokens.append(Token(i, "", word, i))
            if posixly_correct and table.style == GETOPT:
                options_end = True
            i += 1
        elif word == "--":
            options_end = True
            i += 1
        elif word.startswith("--"):
            i = _long(table, argv, i, tokens)
        else:
            i = _short(table, argv, i, tokens)
    return tokens


def _long(table: Table, argv: list[str], i: int, tokens: list[Token]) -> int:
    word = argv[i][2:]
    value: str | None = None
    if table.style == GETOPT and "=" in word:
        word, value = word.split("=", 1)
    negated = False
    if table.style == CURL and word.startswith("no-"):
        word, negated = word[3:], True
    name = _match(table, word)
    kind = table.long[name]
    if table.style == CURL and negated and kind != BOOL:
        raise Unreadable(f"--no-{word} is not a boolean option")
    if table.style == GETOPT and name.startswith("no-") and table.long.get(name[3:]) == OPTIONAL:
        name, negated = name[3:], True  # getopt lists the generated --no-<bool> forms
    if kind == ARG:
        return _argument(argv, i, name, value, f"--{name}", tokens)
    if value is not None and kind != OPTIONAL:
        raise Unreadable(f"--{name} takes no argument")
    tokens.append(Token(i, name, value, -1, negated))
    return i + 1


def _argument(
    argv: list[str], i: int, name: str, attached: str | None, spelled: str, tokens: list[Token]
) -> int:
    """Option `name` (at argv[i], written `spelled`) with its argument: the one
    `attached` to it, else the next word; where the scan goes on."""
    if attached is not None:
        tokens.append(Token(i, name, attached, -1))
        return i + 1
    if i + 1 >= len(argv):
        raise Unreadable(f"{spelled} needs an argument")
    tokens.append(Token(i, name, argv[i + 1], i + 1))
    return i + 2


def _match(table: Table, word: str) -> str:
    """The long name `word` stands for: itself, or the one name it begins."""
    if word in table.long:
        return word
    found = [name for name in table.long if name.startswith(word)] if word else []
    if len(found) != 1:
        raise Unreadable(f"--{word} is {'ambiguous' if found else 'not a known option'}")
    return found[0]


def _short(table: Table, argv: list[str], i: int, tokens: list[Token]) -> int:
    word = argv[i]
    for pos in range(1, len(word)):
        name = table.short.get(word[pos])
        if name is None:
            raise Unreadable(f"-{word[pos]} is not a known option")
        if table.long[name] != ARG:
            tokens.append(Token(i, name, None, -1))
            continue
        return _argument(argv, i, name, word[pos + 1 :] or None, f"-{word[pos]}", tokens)
    if len(word) == 1:
        raise Unreadable("a lone '-' is not an option curl knows")
    return i + 1
