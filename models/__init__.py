"""Installed as the package data `hf_crystal.models`: the embedded models' Hub-shaped folders (`hf_crystal.embedded`)."""
