"""Streamlit dashboard over the extraction database: search, image detail, statistics, runs."""
