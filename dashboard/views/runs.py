"""Runs: what each extraction run extracted (checkpoint, method, layers, resolution), its counts and timing."""

from __future__ import annotations

import json

import streamlit as st

from dashboard import data, questions
from dashboard.markup import code, literal

RUN_COLUMNS = [
    "label",
    "run_id",
    "status",
    "method",
    "layers",
    "gradcam_layer",
    "image_res",
    "grid_size",
    "n_images",
    "n_captions",
    "n_words",
    "n_errors",
    "seconds",
    "started_at",
    "finished_at",
    "device",
    "checkpoint_path",
]


def relabel(run_id: str) -> None:
    """Keep the label typed for a run (this browser session; blank: back to the automatic one)."""
    st.session_state.setdefault(data.RUN_LABELS, {})[run_id] = st.session_state[f"label_{run_id}"].strip()


ctx = data.context()
st.title("Runs")
runs = questions.list_runs(ctx.db)
runs.insert(0, "label", [data.run_label(run) for run in runs.to_dict("records")])
st.dataframe(
    runs[[c for c in RUN_COLUMNS if c in runs.columns]],
    hide_index=True,
    width="stretch",
    column_config={"seconds": st.column_config.NumberColumn("seconds", format="%.1f")},
)
st.caption(f"Database {code(ctx.db.path)}. Choose the run the other pages show in the sidebar.")

run_id = ctx.run["run_id"]
summary = questions.run_summary(ctx.db, run_id)
st.subheader(f"Run {literal(data.run_label(ctx.run))}")
st.text_input(
    "Label",
    value=st.session_state.get(data.RUN_LABELS, {}).get(run_id, ""),
    key=f"label_{run_id}",
    on_change=relabel,
    args=(run_id,),
    max_chars=80,
    placeholder=data.run_label(ctx.run),
    help="A name of your own for this run in the sidebar and here, for this browser session; blank for the "
    "automatic one (checkpoint file · method · image size). The run's id is "
    f"{run_id}.",
)
cells = st.columns(5)
speed = summary["images_per_second"]
for cell, (label, value) in zip(
    cells,
    [
        ("status", summary["status"]),
        ("images done", f"{summary['images_done']:,}"),
        ("captions", f"{summary['captions']:,}"),
        ("errors", f"{summary['errors']:,}"),
        ("images / s", "–" if speed is None else f"{speed:.2f}"),
    ],
    strict=True,
):
    cell.metric(label, value)

left, right = st.columns(2)
with left:
    st.markdown("**Extraction**")
    layers = ", ".join(str(layer) for layer in summary["layers"]) if summary["layers"] is not None else "–"
    st.markdown(
        f"- checkpoint: {code(str(summary['checkpoint_path']))}\n"
        f"- sha256: `{(summary['checkpoint_sha256'] or '')[:16]}…`\n"
        f"- method: **{summary['method']}**; attention layers {layers}; Grad-CAM layer {summary['gradcam_layer']}\n"
        f"- image {summary['image_res']} px, patch {summary['patch_size']}, grid "
        f"{summary['grid_size']} x {summary['grid_size']}\n"
        f"- code {literal(str(summary['code_version']))} on {literal(str(summary['device']))}\n"
        f"- images: {code(str(summary['images_dir']))}"
        + (
            ""
            if ctx.images_dir is None or str(ctx.images_dir) == summary["images_dir"]
            else f" (shown from {code(str(ctx.images_dir))})"
        )
        + "\n"
        f"- captions: {code(str(summary['captions_file']))}; instances: {code(str(summary['instances_file']))}\n"
        f"- started {summary['started_at']}, finished {summary['finished_at'] or '–'}, "
        f"{summary['seconds'] or 0:.1f} s of compute"
    )
with right:
    st.markdown("**Word rows per method and layer**")
    st.dataframe(summary["slices"], hide_index=True, width="stretch")
    with st.expander("Model configuration"):
        config = summary["config"]
        st.json(json.loads(config) if isinstance(config, str) else config or {})

errors = questions.run_errors(ctx.db, run_id)
if errors.empty:
    st.success("No errors logged for this run.")
else:
    st.markdown(f"**Errors** ({summary['errors']:,}, newest first)")
    st.dataframe(errors, hide_index=True, width="stretch")
