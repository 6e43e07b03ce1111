"""The NRI wire and runtime, knowing nothing of tracing.

mux (frames), ttrpc (messages), connection (calls
over a socket), api (the shared vocabulary), stub (registration, events, reconnection) and the generated proto."""
