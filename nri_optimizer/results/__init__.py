"""What a trace leaves, and how lists are stored and merged.

Image references and result names (an image's, or a workload's), the formats (list, CSV, nydus JSON), the store
that replaces a result's files as one set, what a new run does to a result (keep, replace, merge), the journal of
traces in flight, and the merge of several runs."""
