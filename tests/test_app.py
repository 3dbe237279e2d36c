"""The app opens on the embedded default and reacts to its widgets (Streamlit AppTest, no browser)."""
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def test_app_opens_and_resamples_when_widgets_change():
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Distill Studio"
    assert len(at.get("image")) == 2  # real grid and generated grid
    before = at.get("image")[1].value
    at.slider(key="cfg").set_value(3.0).run()
    assert not at.exception
    at.number_input(key="seed").set_value(5).run()
    assert not at.exception
    after = at.get("image")[1]
    assert after.value != before and after.captions == ["10 Euler steps, CFG 3.0, seed 5"]


def test_app_with_no_class_selected_shows_a_hint():
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.multiselect(key="classes").set_value([]).run()
    assert not at.exception
    assert any("Pick at least one class" in i.value for i in at.info)
