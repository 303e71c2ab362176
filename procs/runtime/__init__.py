"""The process runtime: configuration (:mod:`.config`), the roster of programs (:mod:`.roster`),
the lifecycle every program runs through (:mod:`.process`), time (:mod:`.clock`) and where a
server of the instance listens (:mod:`.endpoints`). Imports ``shm`` and the standard library
(plus pydantic); nothing else of ``procs``."""
