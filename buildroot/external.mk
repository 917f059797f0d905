include $(sort $(wildcard $(BR2_EXTERNAL_HAVMS_PATH)/package/*/*.mk))
