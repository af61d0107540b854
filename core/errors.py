"""The one error type prunelab raises for problems with a user's input."""


class PrunelabError(Exception):
    """A problem with the user's input, told in one line that names the offender.

    The CLI prints it as ``prunelab: error: <message>`` and exits with code 2; the dashboard
    shows it as a message on the page. Anything else that escapes is a bug in prunelab.
    """


def error_line(error: BaseException, with_type: bool = False) -> str:
    """The first line of ``error``'s message, for one-line reports of failures in code we call.

    An empty message gives the exception's type name. ``with_type`` prefixes the type name
    (``"ValueError: first line"``), for messages where the type is the useful part.
    """
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    name = type(error).__name__
    if with_type:
        return f"{name}: {first}" if first else name
    return first or name
