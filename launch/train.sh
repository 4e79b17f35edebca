#!/usr/bin/env bash
# Hy3 LoRA SFT with `megatron sft`, in plain shell: the run of recipes/lora-80g-2n-16k-mtp.yaml
# (2 nodes x 8 GPUs of 80 GB, 16K tokens, all-linear LoRA, MTP on). `hy3 launch RECIPE` builds this from
# any recipe and checks the layout first; this script is for clusters where only ms-swift is installed.
#
# Run the same command on every node (a shared filesystem holds the model, data and output):
#   IP_LIST=10.0.0.1,10.0.0.2 MODEL=/shared/Hy3 DATASET=/shared/sft.jsonl OUTPUT_DIR=/shared/hy3-lora \
#       bash launch/train.sh
# IP_LIST: node addresses, master first. Each node finds its rank from its own address (`hostname -I`);
# set LOCAL_IP (this node's address) or NODE_RANK where that does not work. No SSH between nodes is needed.
# HOST_GPU_NUM: GPUs per node (8). MASTER_PORT: rendezvous port on the master (29500).
# DRY_RUN=1 prints the environment and command instead of running them.
# Cluster-specific NCCL settings (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...) pass through from the environment.
set -euo pipefail

: "${IP_LIST:?set IP_LIST to the node addresses, master first, e.g. IP_LIST=10.0.0.1,10.0.0.2}"
: "${MODEL:?set MODEL to the Hy3 checkpoint directory (published layout)}"
: "${DATASET:?set DATASET to the training data (jsonl)}"
OUTPUT_DIR=${OUTPUT_DIR:-megatron_output/hy3-lora}
HOST_GPU_NUM=${HOST_GPU_NUM:-8}
MASTER_PORT=${MASTER_PORT:-29500}

IFS=, read -r -a IPS <<< "${IP_LIST// /}"
NNODES=${#IPS[@]}
MASTER_ADDR=${IPS[0]}
if [[ -z "${NODE_RANK:-}" ]]; then
    LOCAL_ADDRS=${LOCAL_IP:-"$(hostname -I 2>/dev/null || true) 127.0.0.1"}
    for i in "${!IPS[@]}"; do
        for a in $LOCAL_ADDRS; do
            if [[ "${IPS[$i]}" == "$a" ]]; then NODE_RANK=$i; break 2; fi
        done
    done
fi
if [[ -z "${NODE_RANK:-}" ]]; then
    echo "train.sh: none of IP_LIST ($IP_LIST) is an address of this machine; set LOCAL_IP or NODE_RANK" >&2
    exit 1
fi

# ms-swift's `megatron` re-launches itself under torchrun from these (swift/cli/main.py).
export NPROC_PER_NODE=$HOST_GPU_NUM NNODES NODE_RANK MASTER_ADDR MASTER_PORT
# NCCL/CUDA settings: the same as NCCL_ENV in megatron_hy/launch.py.
export CUDA_DEVICE_MAX_CONNECTIONS=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}

ARGS=(
    --model "$MODEL"
    --dataset "$DATASET"
    --output_dir "$OUTPUT_DIR"
    --tuner_type lora
    --torch_dtype bfloat16
    --mtp_num_layers 1
    # Hy3 MoE: sigmoid router, expert bias frozen for SFT, no aux loss, grouped GEMM, all-to-all dispatch
    --moe_router_load_balancing_type none
    --moe_aux_loss_coeff 0.0
    --megatron_extra_kwargs '{"moe_router_score_function":"sigmoid","moe_router_enable_expert_bias":true,"moe_router_bias_update_rate":0.0}'
    --moe_router_dtype fp32
    --moe_grouped_gemm true
    --moe_permute_fusion true
    --moe_token_dispatcher_type alltoall
    # layout for 16 GPUs: TP 8 x PP 2, experts over 8 GPUs
    --tensor_model_parallel_size 8
    --sequence_parallel true
    --pipeline_model_parallel_size 2
    --expert_model_parallel_size 8
    --expert_tensor_parallel_size 1
    --max_length 16384
    --packing true
    --micro_batch_size 1
    --global_batch_size 32
    --recompute_granularity full
    --recompute_method uniform
    --recompute_num_layers 1
    --lora_rank 8
    --lora_alpha 32
    --target_modules all-linear
    --lr 0.0001
    --min_lr 1e-05
    --lr_warmup_fraction 0.05
    --num_train_epochs 1
    --save_steps 500
    # checkpoints hold the adapter only; merge it with `hy3 lora merge`
    --merge_lora false
    --dataset_num_proc 8
    --dataloader_num_workers 4
)

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "NPROC_PER_NODE=$NPROC_PER_NODE NNODES=$NNODES NODE_RANK=$NODE_RANK MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT"
    printf 'megatron sft'
    printf ' %q' "${ARGS[@]}"
    printf '\n'
    exit 0
fi
exec megatron sft "${ARGS[@]}"
