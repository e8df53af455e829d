"""What an operator's action raises when it can't be done as asked. The core
and its collaborators (lists, imports, export) raise these; the web layer
answers each kind with its status and the message, which says why."""


class ActionError(Exception):
    """An operator action that can't be done as asked; the message says why."""


class BadInput(ActionError):
    """The action was asked with input that can never work (a bad URL, say)."""


class NotFound(ActionError):
    """The action names something that does not exist (any more)."""
