import dagster as dg

# One partition per model; a key is a Hub repo id `org/name` or a local model's id.
models_partitions = dg.DynamicPartitionsDefinition(name="models")
