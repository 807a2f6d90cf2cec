"""Datasets: fetching verified sources, building avdigits, reading manifests."""
