"""The planned run, shared by both tools: one typed plan (`RunSpec`) and the small utilities below it.

This package is the lowest layer: it imports neither `doctor` nor `niah_run`.
"""
