-- Orthanc -> dicomnode auto-routing (loaded through "LuaScripts" in orthanc.json).
--
-- Every chest radiograph Orthanc stores (Modality CR or DX) is forwarded to the
-- modality "dicomnode" declared in "DicomModalities". The node's results come back
-- as Modality OT (heatmap Secondary Capture) and SR (report), so they are never
-- forwarded again: there is no loop. The node itself skips CR/DX images that are
-- not chest radiographs.
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if modality == 'CR' or modality == 'DX' then
    SendToModality(instanceId, 'dicomnode')
  end
end
