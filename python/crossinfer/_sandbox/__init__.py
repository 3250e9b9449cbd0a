"""Model files opened in fenced child processes, under limits (see ``pool``).

Used by the expansion service for every request, and by a worker that checks a model update
(``crossinfer._updates``), so it belongs to the library, not to the service: ``settings`` (what
an inspection may spend and is confined to), ``pool`` (the service side: caps, cache, answers),
``processes`` (handles on the zygote and each inspector), ``inspector`` (the child side) and
``fences`` (what the kernel offers to fence a child in).
"""
