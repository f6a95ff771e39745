"""Reports: figures (``plots``) rendered from result objects."""
