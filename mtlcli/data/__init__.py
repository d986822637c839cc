"""Datasets: raw sources, construction (`mtl prepare`) and loading prepared splits."""
