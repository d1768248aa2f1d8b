"""The dashboard's colour scale, headless: one shared scale with its colour bar by default, per map on request.

Fixtures and helpers are test_dashboard.py's (a real extraction of the shared COCO subset).
"""

import json

from streamlit.testing.v1 import AppTest

from tests import test_dashboard as dash
from tests.conftest import open_page

db = dash.db

SHARED_CAPTION = "× uniform, one scale shared by every map on this page"
PER_MAP_CAPTION = "per map (stretched)"


def colour_bars(at: AppTest) -> list[str]:
    """The axis titles of the page's colour bars."""
    return [
        json.loads(chart.proto.spec)["layout"]["xaxis"]["title"]["text"]
        for chart in at.get("plotly_chart")
        if chart.proto.id.endswith("colour_bar")
    ]


def test_search_draws_one_shared_colour_bar_by_default(open_app, db):
    at = open_page(open_app, db, None, word="dog")
    dash.assert_clean(at)
    assert len(dash.card_links(at)) > 1
    assert at.radio(key="scale").value == "shared"
    assert at.radio(key="scale").options == ["shared", "per map"]
    assert len(colour_bars(at)) == 1 and colour_bars(at)[0].startswith(SHARED_CAPTION)
    assert not at.slider(key="vmax").disabled


def test_scale_choice_is_bound_to_the_url_and_a_link_restores_it(open_app, db):
    at = open_page(open_app, db, None, word="dog")
    # The browser writes a bound widget's value into the URL under this parameter (AppTest does not).
    assert at.radio(key="scale").proto.query_param_key == "scale"
    at.radio(key="scale").set_value("per map").run()
    dash.assert_clean(at)
    assert len(colour_bars(at)) == 1 and colour_bars(at)[0].startswith(PER_MAP_CAPTION)
    assert at.slider(key="vmax").disabled
    linked = open_page(open_app, db, None, word="dog", scale="per map")
    assert linked.radio(key="scale").value == "per map"
    assert len(colour_bars(linked)) == 1 and colour_bars(linked)[0].startswith(PER_MAP_CAPTION)
