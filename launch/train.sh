#!/usr/bin/env bash
# Hy3 LoRA SFT with `megatron sft`, in plain shell: the run of recipes/lora-80g-2n-16k-mtp.yaml
# (2 nodes x 8 GPUs of 80 GB, 16K tokens, all-linear LoRA, MTP on). `hy3 launch RECIPE` builds this from
# any recipe and checks the layout first; this script is for clusters driven from plain shell. Every node
# needs ms-swift and megatron-hy (the Dockerfile's image has both): the Hy3 plugin for ms-swift lives in
# megatron-hy, and Hy3 rows are encoded with `hy3 data encode`.
#
# Run the same command on every node (a shared filesystem holds the model, data and output):
#   IP_LIST=10.0.0.1,10.0.0.2 MODEL=/shared/Hy3 DATASET=/shared/sft.jsonl OUTPUT_DIR=/shared/hy3-lora \
#       bash launch/train.sh
# DATASET: Hy3 rows (.jsonl/.json) are encoded by node 0 into OUTPUT_DIR/hy3-data/NAME (ms-swift's own
# loader would drop reasoning_effort and reasoning_content) and trained as --cached_dataset with the
# plugin's hy3 template (set TEMPLATE=hy3_preview for Hy3 preview); the other nodes wait for it. A
# directory (from `hy3 data encode --swift-dataset`) is passed as --cached_dataset; anything else as --dataset.
# PLUGIN: the plugin file (default: megatron_hy/swift/plugin/ms_swift.py next to this script; for an installed
# megatron-hy, `hy3 data plugin-path` prints it). HY3: the hy3 command (hy3).
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
PLUGIN=${PLUGIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/megatron_hy/swift/plugin/ms_swift.py}
HY3=${HY3:-hy3}
TEMPLATE=${TEMPLATE:-hy3}
MAX_LENGTH=16384

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
# integer settings: refused here with one line rather than by torchrun later
check_int() {  # NAME VALUE LO [HI]
    local name=$1 value=$2 lo=$3 hi=${4:-}
    if [[ "$value" =~ ^[0-9]{1,9}$ ]] && (( 10#$value >= lo )) && [[ -z "$hi" || 10#$value -le $hi ]]; then
        return 0
    fi
    echo "train.sh: $name: expected an integer $([[ -n "$hi" ]] && echo "from $lo to $hi" || echo ">= $lo"), found '$value'" >&2
    exit 1
}
check_int NODE_RANK "$NODE_RANK" 0 $((NNODES - 1))
check_int MASTER_PORT "$MASTER_PORT" 1 65535
check_int HOST_GPU_NUM "$HOST_GPU_NUM" 1
NODE_RANK=$((10#$NODE_RANK)) MASTER_PORT=$((10#$MASTER_PORT)) HOST_GPU_NUM=$((10#$HOST_GPU_NUM))

# ms-swift's `megatron` re-launches itself under torchrun from these (swift/cli/main.py).
export NPROC_PER_NODE=$HOST_GPU_NUM NNODES NODE_RANK MASTER_ADDR MASTER_PORT
# NCCL/CUDA settings: the same as NCCL_ENV in megatron_hy/launch.py.
export CUDA_DEVICE_MAX_CONNECTIONS=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}

# Training data: Hy3 rows are encoded once, by node 0, into the run's directory.
ENCODE=()
if [[ "$DATASET" == *.jsonl || "$DATASET" == *.json ]]; then
    NAME=$(basename "$DATASET"); NAME=${NAME%.*}
    CACHED="$OUTPUT_DIR/hy3-data/$NAME"
    ENCODE=("$HY3" data encode --model "$MODEL" "$DATASET" "$OUTPUT_DIR/hy3-data/$NAME.jsonl"
            --swift-dataset "$CACHED" --max-length "$MAX_LENGTH")
    DATA_ARGS=(--cached_dataset "$CACHED" --template "$TEMPLATE")
elif [[ -d "$DATASET" ]]; then
    DATA_ARGS=(--cached_dataset "$DATASET" --template "$TEMPLATE")
else
    DATA_ARGS=(--dataset "$DATASET")
fi

ARGS=(
    --model "$MODEL"
    "${DATA_ARGS[@]}"
    --output_dir "$OUTPUT_DIR"
    --tuner_type lora
    --torch_dtype bfloat16
    # the Hy3 plugin: mcore-bridge builds the model from config.json, Tencent's MTP key, both layouts
    --custom_register_path "$PLUGIN"
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
    --max_length "$MAX_LENGTH"
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
    if (( ${#ENCODE[@]} )); then
        printf '# node 0 first runs:'
        printf ' %q' "${ENCODE[@]}"
        printf '\n'
    fi
    printf 'megatron sft'
    printf ' %q' "${ARGS[@]}"
    printf '\n'
    exit 0
fi
if (( ${#ENCODE[@]} )) && [[ ! -d "$CACHED" ]]; then
    if [[ "$NODE_RANK" == 0 ]]; then
        "${ENCODE[@]}"
    else
        echo "train.sh: waiting for node 0 to encode $DATASET into $CACHED" >&2
        for _ in $(seq 1 1440); do [[ -d "$CACHED" ]] && break; sleep 5; done
        [[ -d "$CACHED" ]] || { echo "train.sh: $CACHED did not appear in 2 hours; is node 0 running?" >&2; exit 1; }
    fi
fi
exec megatron sft "${ARGS[@]}"
