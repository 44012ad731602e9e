"""One kernel's ipyparallel cluster. :mod:`.plan` turns a request into an EnginePlan (pure);
:mod:`.launchers` and :mod:`.starting` start it; :mod:`.ipcluster` runs it (status, restart, stop);
:mod:`.losses` and :mod:`.halting` follow and end engines; :mod:`.pxview`, :mod:`.failfast` and
:mod:`.streaming` are what ``%px`` runs on. Engines import :mod:`.roster`, :mod:`.gpus`,
:mod:`.replies` and :mod:`.status` to report themselves, so this package imports nothing here."""
