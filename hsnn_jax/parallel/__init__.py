"""Scale-out: the device mesh, shardings, explicit collectives, multi-process start-up."""
