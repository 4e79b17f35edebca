"""Everything about ms-swift and mcore-bridge: their run directories (`runs`), the model fields ms-swift must not
override (`model`), `megatron sft` argument names (`args`), the recipe check (`recipe`), Hy3 registered with
mcore-bridge (`bridge`), the `hy3` templates (`templates`), and the file `--custom_register_path` imports
(`plugin/ms_swift.py`, alone in its folder because ms-swift puts that folder on sys.path)."""
