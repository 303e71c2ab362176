"""Read-only views of shared memory for people: the monitor's chart source (:mod:`.chart_source`)."""
