"""The consensus network (method.md §2): per-correspondence inlier logits that guide RANSAC's sampling."""
