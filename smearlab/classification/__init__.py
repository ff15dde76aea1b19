"""White-cell classification: crops, the classifiers (a small ResNet, or measured features + logistic regression), training (plain and DANN), prediction, embeddings."""
