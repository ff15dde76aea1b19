"""White-cell classification: crops, the classifier, training (plain and DANN), prediction, embeddings."""
