"""Data pipelines: ImageNet-layout folders, mixup/cutmix, and the demo's digits dataset."""
