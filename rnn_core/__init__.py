"""Pure modelling core: recurrent models with a streaming step, the keyed state store, training helpers.

Imports nothing of Ray, Kafka or MLflow, so it can be used in a notebook.
"""
