"""Speech translation (X -> English) on the downstream stack: decoding, text, data and the task."""
