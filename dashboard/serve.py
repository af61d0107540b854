"""``python -m dashboard.serve run dashboard/app.py --server...``: Streamlit's command line, with one fix.

Streamlit keeps its first multipage convention alive for apps that have a ``pages/`` folder beside
the main script: until some session has run ``st.navigation``, a visit to ``/tune`` runs
``pages/tune.py`` on its own, without ``app.py`` (so a link's model and plan were ignored on a
freshly started server until someone opened ``/``). prunelab's pages are listed by
``st.navigation`` in app.py, so the folder convention is switched off before the server starts.
Upload folders left by servers that were killed are removed here too, at start.
"""
from __future__ import annotations

import sys


def main() -> None:
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli

    from dashboard import uploads

    uploads.remove_stale()
    PagesManager.uses_pages_directory = False  # read once per server; st.navigation sets the same value
    sys.exit(cli.main(prog_name="streamlit"))


if __name__ == "__main__":
    main()
