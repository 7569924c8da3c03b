set -e
export TORCH_HOME=/work/scratch/poseeval_run/torchhome OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
mkdir -p out
for k in gt copy rev; do
  $PY run_ref.py extract.py --in_folder frames/$k --out_file out/pose_$k.pkl --is_video --type face_pose --image_shape 256,256
  $PY run_ref.py extract.py --in_folder frames/$k --out_file out/id_$k.pkl --is_video --type face_id --image_shape 256,256
done
for k in copy rev; do
  echo "== $k"; $PY run_ref.py cmp_kp.py out/pose_gt.pkl out/pose_$k.pkl || echo "cmp_kp failed"
  $PY run_ref.py /work/scratch/poseeval_run/cmp_with_missing_face.py out/pose_gt.pkl out/pose_$k.pkl
  $PY run_ref.py cmp.py out/id_gt.pkl out/id_$k.pkl
done
