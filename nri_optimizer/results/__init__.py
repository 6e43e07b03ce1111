"""What a trace leaves, and how lists are stored and merged.

Image references and result names, the formats (list, CSV, nydus JSON), the
store that writes them atomically, the journal of traces in flight, and the merge of several runs."""
