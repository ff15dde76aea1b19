"""One module per notebook, holding what the notebook runs."""
