"""Probe: upload any image, type any caption, and see every word's maps and metrics from the run's checkpoint."""

from __future__ import annotations

import streamlit as st

from dashboard import components as ui
from dashboard import data
from dashboard.probe_panel import probe_panel

ctx = data.context()
st.title("Probe")
st.caption(
    "Any image and any caption through the selected run's checkpoint, computed now by the extractor's own "
    "code. Images of the run are probed on the Image page, with their objects' metrics; an uploaded image "
    "has no labelled objects, so its object metrics are absent."
)
upload = st.file_uploader("Image", type=["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"], key="upload")
if upload is None:
    st.info("Upload an image to probe it.")
    st.stop()
with st.expander("Display", icon=":material/palette:"):
    style, _, _ = ui.overlay_controls()
ui.colour_key(style)
probe_panel(ctx, upload.getvalue(), style, key="upload_probe")
