"""Search spaces as data (YAML). The loader and the shipped spaces arrive with the sweep."""
