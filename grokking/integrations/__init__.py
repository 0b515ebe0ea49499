"""LAR in the training loops people already use: a callback for the HuggingFace `Trainer`
(`grokking.integrations.huggingface`) and one for Lightning (`grokking.integrations.lightning`).
Both watch a model through `watch.LARWatch`; neither module is imported here, so each needs only
its own framework (`pip install "grokking[integrations]"`)."""
