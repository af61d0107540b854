"""The prunelab dashboard: ``prunelab dashboard`` (or ``streamlit run dashboard/app.py``).

Pages live in ``dashboard/pages/``; per-person state is in ``dashboard/state.py``, the engine is
reached only through ``dashboard/session.py`` (and the job modules built on it).
To add a page, put its file in ``dashboard/pages/`` and its line in ``PAGES``; a listed page
whose file does not exist yet is left out of the menu.
"""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` from a checkout without installing
    sys.path.insert(0, str(ROOT))

PAGES_DIR = Path(__file__).resolve().parent / "pages"

# (file in pages/, menu title, icon, url path). The order here is the order of the menu. No file is named
# after a standard module (profile.py was): a page run on its own has pages/ on sys.path, and `import cProfile`
# there loaded the page as `profile`.
PAGES = [
    ("model.py", "Model", ":material/memory:", "model"),
    ("layers.py", "Layers", ":material/stacked_bar_chart:", "layers"),
    ("sensitivity.py", "Sensitivity", ":material/query_stats:", "sensitivity"),
    ("tune.py", "Tune", ":material/tune:", "tune"),
    ("layer_times.py", "Profile", ":material/timer:", "profile"),
    ("recover.py", "Recover", ":material/healing:", "recover"),
    ("history.py", "History", ":material/history:", "history"),
    ("export.py", "Export", ":material/download:", "export"),
]
DEFAULT_PAGE = "tune.py"   # where the root address goes
START_PAGE = "start"       # the hidden page at the root that goes there


def pages() -> list:
    """The st.Page objects for every listed page whose file exists, after a hidden start page at the root.

    Streamlit serves its default page at the root only, so a default Tune would answer ``/tune`` (the
    address every link and the README use) with "Page not found". The root instead runs ``_start``,
    which goes on to Tune at ``/tune`` with the address's query intact.
    """
    listed = [st.Page(PAGES_DIR / file, title=title, icon=icon, url_path=url)
              for file, title, icon, url in PAGES if (PAGES_DIR / file).exists()]
    start = st.Page(_start, title="prunelab", url_path=START_PAGE, default=True, visibility="hidden")
    return [start, *listed]


def _start() -> None:
    st.switch_page(PAGES_DIR / DEFAULT_PAGE, query_params=st.query_params.to_dict())


# Long figures stay whole at 1280 px; less empty space above the title.
STYLE = """<style>[data-testid=stMetricValue]{font-size:1.6rem}
[data-testid=stMainBlockContainer]{padding-top:3rem}</style>"""


def run() -> None:
    from dashboard import url_state

    st.set_page_config(page_title="prunelab", page_icon=":material/content_cut:", layout="wide")
    st.html(STYLE)
    url_state.restore()  # a link's model, data and plan, on a session's first run
    navigation = st.navigation(pages(), position="top")  # the full width for the pages at 1280 px
    url_state.problem_ui()
    navigation.run()
    url_state.publish()


run()
