"""The one error type prunelab raises for problems with a user's input."""


class PrunelabError(Exception):
    """A problem with the user's input, told in one line that names the offender.

    The CLI prints it as ``prunelab: error: <message>`` and exits with code 2; the dashboard
    shows it as a message on the page. Anything else that escapes is a bug in prunelab.
    """
