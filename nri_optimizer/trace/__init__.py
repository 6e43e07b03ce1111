"""The trace: the trace server's client, the recorder, and the filter of files the container wrote.

The client of the trace server (its process and one session per container), the recorder
that turns its records into list entries, and the filter that drops files the container wrote itself.
The only importer of optimizer_server.protocol."""
