"""FedMOA and FedAvg-LoRA on the server: rounds, the adapter exchange, aggregation (docs/fedmoa.md)."""
