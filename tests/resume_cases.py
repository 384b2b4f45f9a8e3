"""A changed value for every argument a resume must not change (besides world_size and the
method's own flags, which test_run_folder.py changes through a method that has some), as CLI flags.

Each differs from both the bundled default run and the tiny parquet runs of tests/test_faults.py,
and together they still pass `validate_arguments` (so the CLI reaches its resume check).
"""

CHANGED_FLAGS = {
    "method": ["--method", "beit"],
    "model": ["--model", "vit-tiny"],
    "model_overrides": ["--model_overrides", '{"tokenizer_vocab_size": 64}'],
    "image_size": ["--image_size", "64"],
    "image_mean": ["--image_mean", "0.5", "0.5", "0.5"],
    "image_std": ["--image_std", "0.5", "0.5", "0.5"],
    "seed": ["--seed", "3"],
    "total_batch_size": ["--total_batch_size", "32"],
    "gradient_accumulation_steps": ["--gradient_accumulation_steps", "2"],
    "tokenizer_fit_batches": ["--tokenizer_fit_batches", "3"],
    "dataset_name": ["--dataset_name", "imagefolder"],
    "dataset_config_name": ["--dataset_config_name", "small"],
    "data_files": ["--data_files", "other.parquet"],
    "data_dir": ["--data_dir", "elsewhere"],
    "train_split": ["--train_split", "validation"],
    "image_column": ["--image_column", "img"],
    "streaming": ["--streaming"],
    "shuffle_buffer_size": ["--shuffle_buffer_size", "7"],
    "dataloader_num_workers": ["--dataloader_num_workers", "3"],
    "from_scratch": ["--from_scratch"],
    "max_train_samples": ["--max_train_samples", "100"],
    "preparation_rows": ["--preparation_rows", "5"],
    "max_steps": ["--max_steps", "12"],
    "learning_rate": ["--learning_rate", "0.0123"],
    "weight_decay": ["--weight_decay", "0.123"],
    "warmup_steps": ["--warmup_steps", "3"],
}
