"""dcsched-ridge: an example model-type plugin for dcsched (see ``plugin.py``)."""
