-- Argo CD health check for gptoss.ai/v1alpha1 GptOssModel.
-- The status is in kstatus format (Ready, Reconciling and Stalled conditions plus
-- status.observedGeneration): https://github.com/kubernetes-sigs/cli-utils/tree/master/pkg/kstatus
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

local ready = findCondition(status, "Ready")
local stalled = findCondition(status, "Stalled")
if isTrue(stalled) then
  hs.status = "Degraded"
  hs.message = textOf(stalled) or stalled.reason or "Stalled"
  return hs
end
if isTrue(ready) then
  hs.status = "Healthy"
  hs.message = textOf(ready) or "Ready"
  if status.endpoint ~= nil and status.readyReplicas ~= nil and status.readyReplicas > 0 then
    hs.message = hs.message .. "; serving at " .. status.endpoint
  end
  return hs
end

local message = textOf(findCondition(status, "Reconciling")) or textOf(ready) or "Reconciling"
if status.phase ~= nil then
  message = status.phase .. ": " .. message
end
local downloaded = findCondition(status, "Downloaded")
if status.download ~= nil and status.download.percent ~= nil and not isTrue(downloaded) then
  message = message .. " (" .. status.download.percent .. "% downloaded)"
end
hs.message = message
return hs
