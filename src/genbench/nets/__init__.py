"""Plain ``nn.Module`` networks. Nothing here knows about Lightning, Hydra or noise schedules."""
