"""Running a ``kind: run`` job's command on each worker of its gang (see ``gang``)."""
