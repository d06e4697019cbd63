"""robustkit's command line: one thin module per command over typed library functions."""
