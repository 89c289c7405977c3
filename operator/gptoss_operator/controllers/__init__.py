"""The operator's controllers, one package per kind (and the autoscaler): each holds its
kopf handlers, its reconcile, its status computation and its housekeeping. Importing a
kind's ``handlers`` registers them with kopf."""
