"""kopf handlers, one module per kind. Importing a module registers its handlers."""
