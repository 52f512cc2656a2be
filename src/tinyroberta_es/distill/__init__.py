"""Knowledge distillation: model-output adapters, losses, layer matches, students, caches, augmentation."""
