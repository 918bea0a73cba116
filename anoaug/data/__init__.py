"""Dataset layouts, records, validation, splits and the embedded demo dataset."""
