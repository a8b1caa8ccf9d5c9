//! Datasets: formats, the dataset_info.json registry, tokenization through chat templates,
//! truncation, packing and batching.
