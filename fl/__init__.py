"""Pure federated-learning library: data and partitioners, models, local
training and aggregation strategies. Imports neither Prefect, asyncio,
websockets nor MLflow."""
