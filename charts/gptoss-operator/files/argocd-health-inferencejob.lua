-- Argo CD health check for gptoss.ai/v1alpha1 InferenceJob and InferenceBatch.
-- The status is in kstatus format (Ready, Reconciling and Stalled conditions plus
-- status.observedGeneration): https://github.com/kubernetes-sigs/cli-utils/tree/master/pkg/kstatus
-- and, like batch/v1 Job, has Complete and Failed conditions and a phase
-- (Pending, Running, Succeeded, Failed; a batch also Merging); status.message says why.
-- It uses no Lua standard library, so it runs without resource.customizations.useOpenLibs.
local hs = {}
hs.status = "Progressing"
hs.message = "Waiting for the operator"

local function findCondition(status, conditionType)
  if status.conditions == nil then
    return nil
  end
  for _, condition in ipairs(status.conditions) do
    if condition.type == conditionType then
      return condition
    end
  end
  return nil
end

local function isTrue(condition)
  return condition ~= nil and condition.status == "True"
end

local function textOf(condition)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return nil
end

local status = obj.status
if status == nil or (status.phase == nil and status.conditions == nil) then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local statusMessage = nil
if status.message ~= nil and status.message ~= "" then
  statusMessage = status.message
end

local stalled = findCondition(status, "Stalled")
if isTrue(stalled) or isTrue(findCondition(status, "Failed")) or status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = statusMessage or textOf(stalled) or "Failed"
  return hs
end
local ready = findCondition(status, "Ready")
if isTrue(ready) or isTrue(findCondition(status, "Complete")) or status.phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = statusMessage or textOf(ready) or "Succeeded"
  return hs
end

local message = statusMessage
  or textOf(findCondition(status, "Reconciling"))
  or textOf(findCondition(status, "Scheduled"))
  or textOf(ready)
  or "Waiting to run"
if status.phase ~= nil then
  message = status.phase .. ": " .. message
end
hs.message = message
return hs
